"""What an action is: declared params, a target key, an idempotency flag, dry-run."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Protocol

import structlog

from remediator import errors, models
from remediator.actions import params
from remediator.models.alert import Alert
from remediator.models.decision import Escalation
from remediator.settings import Settings

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("remediator.actions")


async def _unfenced() -> bool:
    return True


@models.value
class Context:
    """What an action may use while it runs; the engine builds one per run."""

    alert: Alert
    rule: str
    settings: Settings
    clients: Any
    """remediator.clients.Clients: the process's shared I/O clients."""
    timeout: float
    """Seconds the action has in all, retries included."""
    decision_id: int = 0
    """The audit row this run records into; 0 when there is none yet (a dry run, a
    simulation). Actions derive idempotency tokens from it (CloudFront's
    CallerReference) and link to it (PagerDuty)."""
    escalation: Escalation | None = None
    """Set when the action runs as a rule's `escalate`: why and what was tried."""
    target: str = ""
    """The remediated target this run is about (`kubernetes.rollout_restart
    prod/deployment/api`); for an escalation, the target of the fix that did not take.
    notify.pagerduty keys its dedup key on it: one page per rule and target."""
    now: Callable[[], float] = time.time
    """Unix time in seconds: the engine's clock, so time-based limits of a family (one
    RDS failover per window) follow the injected clock in tests."""
    holds_lock: Callable[[], Awaitable[bool]] = _unfenced
    """Whether this run still holds its target lock (its fencing token, checked in Redis;
    always true on the embedded backend, where no other replica can take it)."""

    async def fence(self, what: str) -> None:
        """Call right before a side effect that follows reads: raises `errors.Superseded`
        when the target lock lapsed meanwhile (this replica stalled past
        `backend.redis.lock_ttl`), since another replica may have acted on the target."""
        if not await self.holds_lock():
            raise errors.Superseded(
                f"not done: {what}: the lock on {self.target} lapsed while this run was "
                "under way and another replica may hold it (backend.redis.lock_ttl)"
            )

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to the rule and the alert's fingerprint."""
        return _log.bind(rule=self.rule, fingerprint=self.alert.fingerprint)


@models.value
class Result:
    """What an action did (or, in dry-run, would do): shown in the audit `detail`."""

    detail: str
    changed: bool = True
    """False for a recorded no-op (already at the bound, nothing to terminate)."""
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Action(Protocol):
    type: ClassVar[str]
    idempotent: ClassVar[bool]
    """True when running it twice is harmless: only then are failures retried."""
    local: ClassVar[bool]
    """True when it does no I/O (e.g. `log`): run without the timeout machinery."""
    schema: ClassVar[params.Schema]

    def check_allowed(self, values: Mapping[str, Any], settings: Settings) -> None:
        """Raise errors.NotAllowed when validated values are outside what config allows."""

    def target(self, values: Mapping[str, Any]) -> str:
        """The thing acted on, e.g. `prod/deploy/api`; cooldowns and locks key on it."""

    async def run(self, values: Mapping[str, Any], ctx: Context) -> Result: ...

    async def dry_run(self, values: Mapping[str, Any], ctx: Context) -> Result:
        """Prove what can be proven without a side effect; say what would change."""

    # Optional, found with getattr (a Protocol cannot declare optional members):
    #
    #   async def evidence(self, values, ctx) -> Mapping[str, Any]
    #       What the family sees before acting (pod states, service events, sessions),
    #       for the decision and the escalation. Called through evidence.capture, which
    #       bounds its time and size and turns any failure into a note.
    #
    #   duplicate_ok: ClassVar[bool]
    #       True for a message to humans (notify.*): run as a rule's `escalate`, a send
    #       that failed in a way that may have delivered it (a timeout, a 5xx) is tried
    #       again minutes later all the same — a human told twice rather than never.
    #       Without it only an idempotent action, or an errors.NotSent failure, is.
    #
    #   async def resolve(self, values, ctx) -> Result
    #       Undo a notification once the alert resolves (notify.pagerduty: resolve the
    #       incident it triggered). Same values as the run that triggered it.


def family_config(settings: Settings, name: str) -> Any:
    """The parsed `name` section of the config, for an action's allow-lists and connection.

    With no such section, a live run is refused (`not_allowed`: nothing is allowed until
    the config says what is), while a dry run goes on and its detail says nothing could be
    checked — so the example rules still show what they would do on a bare `make run`.
    Returns None only in that dry-run case.
    """
    cfg = settings.section(name)
    if cfg is None and not settings.dry_run:
        raise errors.NotAllowed(
            name, f"no `{name}:` section in the config file: nothing is allowed", what="config"
        )
    return cfg
