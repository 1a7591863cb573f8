"""The one exception tree of remediator.

    RemediatorError
    ├── ConfigError            config file or environment is invalid (`path: message`)
    ├── RuleFileError          a rule file is invalid (`file:line: message`)
    ├── RuleFileErrors         all of a directory's rule file errors, reported at once
    ├── IntakeError            a webhook body cannot be accepted → HTTP 4xx (`status`)
    │   ├── PayloadTooLarge    → 413
    │   └── intake.sns.Rejected  a signed message refused for what it claims → 403
    ├── Backpressure           the journal backlog is full → 503, the sender retries
    ├── BackendUnavailable     Redis or PostgreSQL cannot be reached (or failed a call)
    ├── Superseded             this replica's claim, lock or lease lapsed and another
    │                          replica holds it now: what it was doing must not go on
    ├── TemplateError          a template references a key the alert does not have
    ├── ParamError             a rendered action parameter is invalid (→ template_error)
    ├── NotAllowed             outside what config/rule allow (→ not_allowed), raised
    │                          before a request, or by an action once it reads its target
    └── ActionError            an outgoing call failed: an action's, or one made for it
        │                      (Alertmanager's silences, an SNS certificate fetch); may
        │                      carry `data`, the evidence gathered before it failed
        ├── PermanentError     retrying cannot help (404, 403, bad request)
        └── TemporaryError     may succeed later (timeout, 429, 5xx); carries `delay`
            └── NotSent        never reached the receiver (refused, 429): safe to retry

Every error carries what failed (rule, target, config key, field) so that the message
says what to fix. Library exceptions are wrapped at the client boundary (clients/)
with `raise ... from`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class RemediatorError(Exception):
    """Base of every error remediator raises on purpose."""


class ConfigError(RemediatorError):
    """The config file or environment is invalid; `path` names the config key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class RuleFileError(RemediatorError):
    """A rule file is invalid; str() is `file:line: message`."""

    def __init__(self, file: str, line: int, message: str) -> None:
        super().__init__(f"{file}:{line}: {message}")
        self.file = file
        self.line = line
        self.message = message


class RuleFileErrors(RemediatorError):
    """Several rule file errors, reported together so a user fixes them in one pass."""

    def __init__(self, errors: list[RuleFileError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class IntakeError(RemediatorError):
    """A webhook body that cannot be accepted. `status` is the HTTP answer."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class PayloadTooLarge(IntakeError):
    status = 413


class Backpressure(RemediatorError):
    """The journal backlog reached its bound; answer 503 so the sender retries."""


class BackendUnavailable(RemediatorError):
    """A shared backend (Redis, PostgreSQL) cannot be reached or failed a call."""


class Superseded(RemediatorError):
    """A claim, lock or replica lease this process held has lapsed and was taken over:
    it must not act or record on it (the fencing token no longer matches)."""


class TemplateError(RemediatorError):
    """A template names a key the alert does not carry (never rendered as empty)."""


class ParamError(RemediatorError):
    """A rendered action parameter fails validation (format, length, characters)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"param {field!r}: {message}")
        self.field = field


class NotAllowed(RemediatorError):
    """A rendered parameter is valid but outside what the rule or config allows."""

    def __init__(self, field: str, message: str, *, what: str = "param") -> None:
        super().__init__(f"{what} {field!r}: {message}")
        self.field = field


class ActionError(RemediatorError):
    """An action ran and failed.

    `data` is what the action found before it failed (e.g. the containers it had already
    restarted, a health check's last output), bounded by the action: the audit `result`
    of the failed attempt, as `Result.data` is for one that succeeded.
    """

    def __init__(self, message: str, *, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.data: Mapping[str, Any] = dict(data or {})


class PermanentError(ActionError):
    """Retrying cannot help."""


class TemporaryError(ActionError):
    """May succeed later; `delay` is the suggested wait in seconds before a retry."""

    def __init__(
        self, message: str, *, delay: float = 1.0, data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message, data=data)
        self.delay = delay


class NotSent(TemporaryError):
    """The request never reached (or was refused unprocessed by) the receiver: a retry
    cannot do anything twice, even for an action that is not idempotent."""
