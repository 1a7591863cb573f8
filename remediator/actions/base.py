"""What an action is: declared params, a target key, an idempotency flag, dry-run."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import structlog

from remediator import errors
from remediator.actions import params
from remediator.models.alert import Alert
from remediator.models.decision import Escalation
from remediator.settings import Settings

_log: structlog.typing.FilteringBoundLogger = structlog.get_logger("remediator.actions")


@dataclasses.dataclass(frozen=True, slots=True)
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
    """The audit row of this run (0 in a dry run not yet recorded)."""
    escalation: Escalation | None = None
    """Set when the action runs as a rule's `escalate`: why and what was tried."""

    @property
    def log(self) -> structlog.typing.FilteringBoundLogger:
        """A logger bound to the rule and the alert's fingerprint."""
        return _log.bind(rule=self.rule, fingerprint=self.alert.fingerprint)


@dataclasses.dataclass(frozen=True, slots=True)
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
