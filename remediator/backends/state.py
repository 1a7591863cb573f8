"""Limit state: occurrences decided, attempts, budgets, circuits, locks, pauses, and the
durable records of work in flight (alerts held for `for`, remediations under way).

`State` is the interface the engine uses; `EmbeddedState` is the embedded default (one
replica): counters in memory (rebuilt from the audit on start), pauses, held alerts and
remediations in the SQLite database beside the journal; `backends.redis.RedisState` is
the shared one of several replicas. Each method that checks and changes state does so
atomically — the memory backend never awaits inside one, Redis runs one Lua script — so
two deliveries racing through the engine (or through two replicas) cannot both pass a
guard. Above all `claim`: reading an occurrence and claiming it is ONE operation.

Fencing tokens: a claim, a reserved target lock, a held alert and a remediation carry
the token they were taken with. A shared backend refuses a write made with a token
that is no longer current (`errors.Superseded`): a replica that stalled past its lease
cannot record or act on what another replica took over. The embedded backend, one
process, has nothing to take over: its tokens are 0 and never refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from remediator.backends.sqlite import Batcher, Database
from remediator.engine import guards
from remediator.engine.guards import Circuit, Verdict
from remediator.models.alert import Alert
from remediator.models.decision import Reason
from remediator.models.rule import Rule
from remediator.settings import Budgets

_EMPTY: deque[float] = deque()
"""Stands for "no attempts yet" in reads; never appended to."""
GC_EVERY = 1000
"""Reservations between sweeps of lapsed per-target state."""
MAX_OCCURRENCES = 200_000
"""Occurrence records kept for dedup (bounded memory): at least the last half of this
many touched are always kept; older ones go (see `Dedup`)."""


class Dedup:
    """Occurrence statuses for the duplicate guard, compact and bounded.

    A storm of distinct alerts leaves one record per occurrence, so each must be cheap:
    the key is kept as a 16-byte BLAKE2b digest (not the 100-byte key string; the chance
    of any two colliding at the bound is below 10^-28), the status is an
    interned string shared by every record with it, and the records live in plain dicts
    (no linked list, no tuple per record): about 100 bytes each instead of 320 to 480.

    Two generations bound it in O(1): records are written to `young`; when it holds half
    the bound, it becomes `old` and the previous `old` is dropped. A record read from
    `old` moves back to `young`, so an occurrence still being re-sent (still firing) is
    kept; one untouched for `bound` / 2 newer records may go. A dict popped from the
    front (an LRU by `OrderedDict.popitem`) costs a node per record; one with deletions
    at its front is O(n) to find its oldest entry: this has neither."""

    __slots__ = ("_half", "_old", "_young")

    def __init__(self, bound: int = MAX_OCCURRENCES) -> None:
        self._half = max(1, bound // 2)
        self._young: dict[bytes, str] = {}
        self._old: dict[bytes, str] = {}

    @staticmethod
    def _digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=16).digest()

    def get(self, key: str) -> str | None:
        """The status of `key` (None: never seen, or forgotten past the bound)."""
        d = self._digest(key)
        status = self._young.get(d)
        if status is None:
            status = self._old.pop(d, None)
            if status is not None:
                self._put(d, status)
        return status

    def set(self, key: str, status: str) -> None:
        d = self._digest(key)
        self._old.pop(d, None)
        self._put(d, sys.intern(status))

    def pop(self, key: str) -> None:
        d = self._digest(key)
        self._young.pop(d, None)
        self._old.pop(d, None)

    def _put(self, d: bytes, status: str) -> None:
        young = self._young
        if d not in young and len(young) >= self._half:
            self._old, self._young = young, {}
            young = self._young
        young[d] = status

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


class Pause(NamedTuple):
    """A pause of all actions (rule None) or of one rule: who, why, since, until when."""

    by: str
    reason: str
    since: float
    until: float | None
    """Unix time after which it lifts by itself; None: until resumed."""

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "reason": self.reason, "since": self.since, "until": self.until}


GLOBAL = ""
"""The pause key of the kill switch for every rule (a rule's pause is keyed by its name)."""


class Claim(NamedTuple):
    """An occurrence claimed for deciding."""

    prev: str | None
    """Its status before the claim (None: never seen)."""
    token: int
    """The fencing token of the claim (0: the embedded backend, never taken over)."""
    lock: int = 0
    """Taken over from a dead replica that had reserved the target for it: the token
    of that reservation's lock (`take_lock` inherits it instead of reserving again)."""
    row: int = 0
    """Taken over from a dead replica that had written the action's row (`failed/
    interrupted`, never started) and died before it ran: that row, used again."""
    target: str = ""
    """With `lock`: the target that reservation is on (inherited only for that target)."""


class Mark(NamedTuple):
    """What an audit write sets on its occurrence in the same atomic step, where the
    audit can (`Audit.marks_occurrences`): the row and the status are durable together,
    or neither is (a decided occurrence always has its row)."""

    key: str
    """The occurrence key."""
    status: str
    """Its new status (`outcome/reason`), or "" to leave it."""
    token: int
    """The claim's fencing token: the write is refused (no row) if it is not current."""
    act: str = ""
    """The action's progress on the occurrence: `=` the row's own id (written, not yet
    started), `started`, `-` done (cleared); "" leaves it."""


class State(Protocol):
    @property
    def paused(self) -> bool:
        """The global pause is on (whatever its `until`: see `pause_of`)."""

    def pause_of(self, rule: str, now: float) -> Pause | None:
        """The active pause that stops `rule` (the global one first), or None. Cheap: it
        runs for every decision."""

    def pauses(self) -> dict[str, Pause]:
        """Every pause set, by key (`GLOBAL` or a rule name), lapsed ones included."""

    async def set_pause(self, key: str, pause: Pause | None) -> None:
        """Set (or with None lift) a pause; durable once this returns."""

    @property
    def needs_replay(self) -> bool:
        """Whether the limits live only in this process, so the audit is replayed into
        them on start (a shared backend keeps them: a replay would count twice)."""

    async def claim(
        self, key: str, *, skip: Reason | None, aged: bool, now: float, token: int = 0
    ) -> Claim | None:
        """The duplicate guard (`guards.should_decide`) and the claim, in ONE atomic step:
        None if this delivery is a duplicate; else the occurrence is `deciding`, owned by
        the returned claim. `skip`: the transient reason this delivery would be skipped
        for; `aged`: a held alert come of age, held under `token`. A claim whose owner
        died (a shared backend's lapsed replica) can be claimed again."""

    async def set_occurrence(self, key: str, status: str, now: float, *, token: int = 0) -> None:
        """Set an occurrence's status; with a token, only while that claim is current
        (else `errors.Superseded`: another replica took the occurrence over)."""

    async def forget_occurrence(self, key: str, *, token: int = 0) -> None:
        """Drop a claim left by a decision that failed half-way (decided afresh later)."""

    async def reserve(self, *, rule: Rule, target: str, budgets: Budgets, now: float,
                      dry_run: bool, shadow: bool = False, occurrence: str = "",
                      claim: int = 0) -> Verdict:  # fmt: skip
        """Check cooldown, attempts, rule rate, budgets, circuit, lock; reserve if all
        pass (atomically), taking the target lock (unless dry-run) with the verdict's
        fencing token. `shadow`: a rule in shadow mode among acting ones — its cooldown
        and counts are its own, and it spends none of the shared budgets. `occurrence`,
        `claim`: the occurrence reserved for and its claim's token; a shared backend
        notes the lock on it, for a replica that takes the claim over (`Claim.lock`)."""

    async def release(self, target: str, token: int = 0) -> None:
        """Let go of the target lock taken with `token` (not one taken since by another).
        Never raises for an unavailable backend: a lock not let go of lapses by itself."""

    async def take_lock(
        self, target: str, token: int, *, occurrence: str = "", claim: int = 0
    ) -> int:
        """Inherit a dead replica's reservation of a target: its lock (taken with `token`)
        gets a new token, held by this replica, if it is still that one's or lapsed
        unclaimed; 0 if another holder has it now (reserve again)."""

    async def action_started(self, key: str) -> bool | None:
        """Whether the action of the occurrence's row had started (its side effect may
        have happened); None where the backend cannot tell (embedded: a restart)."""

    async def holds_lock(self, target: str, token: int) -> bool:
        """Whether the lock taken with `token` is still held: checked right before an
        action's side effect (a lapsed lock may have a new holder acting already)."""

    async def relock(self, target: str, token: int = 0) -> None:
        """Take a target's lock again after a restart, for an attempt that held it (one
        awaiting approval, with its token): nothing else may act on the target meanwhile."""

    async def over_budget(self, budgets: Budgets, now: float) -> str | None:
        """Why the global action budget is now exceeded (the caller's own reservation
        counted), e.g. after a reload lowered it; None when within."""

    async def end_trial(self, *, rule: Rule, target: str) -> None:
        """A half-open circuit's trial was refused before it acted: let another through."""

    async def record_result(self, *, rule: Rule, target: str, ok: bool, now: float) -> bool: ...

    async def escalation_allowed(self, *, now: float, window: float, limit: int) -> bool:
        """Count one escalation unless `limit` were sent in the last `window` seconds."""

    async def snapshot(self, rule: Rule, now: float) -> dict[str, object]: ...

    def open_circuits(self, rules: Mapping[str, Rule], now: float) -> dict[str, int]:
        """Open circuits per rule name, in one pass (it runs on every /metrics scrape)."""

    def restore_attempt(self, *, rule: str, target: str, at: float, shadow: bool = False) -> None:
        """Replay an attempt from the audit on start (a shadow one in its own namespace)."""

    def restore_escalation(self, at: float) -> None:
        """Replay a sent escalation on start, for `limits.max_escalations_per_window`."""

    def save_held(self, key: str, record: Mapping[str, Any]) -> asyncio.Future[Any] | None:
        """Keep an alert held for its `for` (durably: the future resolves once it is)."""

    def drop_held(self, key: str) -> None: ...

    async def held(self) -> list[dict[str, Any]]:
        """Held alerts left by an earlier run."""

    async def save_remediation(self, key: str, record: Mapping[str, Any]) -> None:
        """Keep the state of a remediation under way (durable once this returns)."""

    def drop_remediation(self, key: str, token: int = 0) -> asyncio.Future[Any] | None:
        """Forget a remediation; the future (if any) resolves once that is durable."""

    async def remediations(self) -> list[dict[str, Any]]:
        """Remediations under way left by an earlier run."""

    async def announce_resolved(self, alert: Alert, now: float) -> None:
        """Tell the other replicas an occurrence resolved (what they hold of it ends)."""

    async def resolved_at(self, occurrence: str) -> float | None:
        """When any replica saw this occurrence resolve (None: not seen, or not shared)."""

    async def hand_approval(
        self, answer: Mapping[str, Any], *, wait_result: bool = True
    ) -> tuple[int, str] | None:
        """A human's answer to an approval this replica does not hold, handed to the
        replica that does: (HTTP status, what it answered), or None when none holds it
        (embedded: there is no other replica)."""


class MemoryState:
    """The limit counters, in this process: what the audit can rebuild on start."""

    def __init__(self) -> None:
        self._pauses: dict[str, Pause] = {}
        self._occurrences = Dedup()
        self._last_attempt: dict[str, float] = {}
        self._attempts: dict[tuple[str, str], deque[float]] = {}
        self._rule_actions: dict[str, deque[float]] = {}
        self._budget = guards.Budget()
        self._circuits: dict[tuple[str, str], Circuit] = {}
        self._locks: set[str] = set()
        self._escalations: deque[float] = deque()
        self._expiry: dict[str, float] = {}
        """Per target: when its cooldown, attempts and circuit can no longer matter."""
        self._reserves = 0

    needs_replay = True

    @property
    def paused(self) -> bool:
        return GLOBAL in self._pauses

    def pause_of(self, rule: str, now: float) -> Pause | None:
        if not self._pauses:
            return None
        for key in (GLOBAL, rule):
            p = self._pauses.get(key)
            if p is not None and p.active(now):
                return p
        return None

    def pauses(self) -> dict[str, Pause]:
        return dict(self._pauses)

    async def set_pause(self, key: str, pause: Pause | None) -> None:
        if pause is None:
            self._pauses.pop(key, None)
        else:
            self._pauses[key] = pause

    def save_held(self, key: str, record: Mapping[str, Any]) -> asyncio.Future[Any] | None:
        return None  # nothing durable in memory alone

    def drop_held(self, key: str) -> None:
        return None

    async def held(self) -> list[dict[str, Any]]:
        return []

    async def save_remediation(self, key: str, record: Mapping[str, Any]) -> None:
        return None

    def drop_remediation(self, key: str, token: int = 0) -> asyncio.Future[Any] | None:
        return None

    async def remediations(self) -> list[dict[str, Any]]:
        return []

    async def announce_resolved(self, alert: Alert, now: float) -> None:
        return None  # one replica: nobody else to tell

    async def resolved_at(self, occurrence: str) -> float | None:
        return None  # the engine remembers the resolves it saw itself

    async def hand_approval(
        self, answer: Mapping[str, Any], *, wait_result: bool = True
    ) -> tuple[int, str] | None:
        return None  # one replica: what it does not hold, nobody holds

    async def claim(
        self, key: str, *, skip: Reason | None, aged: bool, now: float, token: int = 0
    ) -> Claim | None:
        prev = self._occurrences.get(key)  # a read keeps it: still re-sent, still firing
        if not guards.should_decide(prev, skip, aged=aged):
            return None
        await self.set_occurrence(key, guards.DECIDING, now)
        return Claim(prev, 0)

    async def occurrence(self, key: str) -> str | None:
        return self._occurrences.get(key)

    async def set_occurrence(self, key: str, status: str, now: float, *, token: int = 0) -> None:
        self._occurrences.set(key, status)

    async def reserve(
        self, *, rule: Rule, target: str, budgets: Budgets, now: float, dry_run: bool,
        shadow: bool = False, occurrence: str = "", claim: int = 0,
    ) -> Verdict:  # fmt: skip
        self._reserves += 1
        if self._reserves % GC_EVERY == 0:
            self._collect(now)
        lim = rule.limits
        own = _shadow_key(rule.name, target) if shadow else target
        """What the cooldown keys on: the target, or for a shadow rule its own copy."""
        last = self._last_attempt.get(own)
        if last is not None and now - last < lim.cooldown:
            return guards.cooldown(target, last, now, lim)
        key = (rule.name, target)
        # Read without creating: a target refused below must leave nothing behind, or a
        # storm over many targets (pods, instances) would grow these tables for good.
        attempts = guards.prune(self._attempts.get(key, _EMPTY), now, lim.window)
        if len(attempts) >= lim.max_attempts:
            return guards.max_attempts(target, len(attempts), lim)
        rule_actions = guards.prune(self._rule_actions.get(rule.name, _EMPTY), now, lim.window)
        if lim.max_actions is not None and len(rule_actions) >= lim.max_actions:
            return guards.rate_limited(len(rule_actions), lim)
        why = self._budget.refuses(budgets, target, now)
        if why is not None:
            return Verdict(Reason.BUDGET_EXHAUSTED, why)
        circuit = self._circuits.get(key)
        if guards.circuit_blocks(circuit, rule, now):
            assert circuit is not None  # circuit_blocks is False for None
            return guards.circuit_open(target, circuit, rule, now)
        if target in self._locks:
            return guards.locked(target, now)
        if circuit is not None and circuit.opened_at is not None and not dry_run:
            circuit.trial = True  # half-open: this is the one trial attempt
        # All guards passed: reserve the attempt. A dry run counts too, so that dry-run
        # shows exactly what production would do, cooldowns and budgets included; a
        # shadow rule's only in its own namespace, so it never holds back a live rule.
        self._last_attempt[own] = now
        if attempts is _EMPTY:
            attempts = self._attempts[key] = deque()
        if rule_actions is _EMPTY:
            rule_actions = self._rule_actions[rule.name] = deque()
        attempts.append(now)
        rule_actions.append(now)
        if not shadow:
            self._budget.add(now, target)
        self._expiry[own] = max(
            self._expiry.get(own, 0.0),
            now + max(lim.cooldown, lim.window, rule.circuit_breaker.reset_after),
        )
        if own != target:
            self._expiry[target] = max(self._expiry.get(target, 0.0), self._expiry[own])
        if not dry_run:
            self._locks.add(target)
        return Verdict(None, attempt=len(attempts))

    def _collect(self, now: float) -> None:
        """Forget targets whose limits have all lapsed, so memory follows live targets only."""
        gone = {t for t, until in self._expiry.items() if until < now and t not in self._locks}
        if not gone:
            return
        for t in gone:
            del self._expiry[t]
            self._last_attempt.pop(t, None)
        for table in (self._attempts, self._circuits):
            for key in [k for k in table if k[1] in gone]:
                del table[key]

    async def release(self, target: str, token: int = 0) -> None:
        self._locks.discard(target)

    async def relock(self, target: str, token: int = 0) -> None:
        self._locks.add(target)

    async def take_lock(
        self, target: str, token: int, *, occurrence: str = "", claim: int = 0
    ) -> int:
        return 0  # one process: nothing to inherit

    async def action_started(self, key: str) -> bool | None:
        return None  # an interrupted action's progress is not kept (the row tells)

    async def over_budget(self, budgets: Budgets, now: float) -> str | None:
        self._budget.prune(now, budgets.window)
        spent = len(self._budget.actions)
        if spent > budgets.max_actions_per_window:
            return (
                f"{spent} actions in the last {budgets.window:.0f}s "
                f"(limits.max_actions_per_window={budgets.max_actions_per_window})"
            )
        return None

    async def holds_lock(self, target: str, token: int) -> bool:
        return True  # one process: its locks never lapse

    async def forget_occurrence(self, key: str, *, token: int = 0) -> None:
        self._occurrences.pop(key)

    async def end_trial(self, *, rule: Rule, target: str) -> None:
        c = self._circuits.get((rule.name, target))
        if c is not None:
            c.trial = False

    async def record_result(self, *, rule: Rule, target: str, ok: bool, now: float) -> bool:
        """Count a failed/ineffective or successful attempt; True when the circuit opens now."""
        key = (rule.name, target)
        c = self._circuits.setdefault(key, Circuit())
        if ok:
            c.failures = 0
            c.opened_at = None
            c.trial = False
            return False
        c.failures += 1
        if c.failures >= rule.circuit_breaker.open_after:
            was_open = (
                c.opened_at is not None and now - c.opened_at < rule.circuit_breaker.reset_after
            )
            c.opened_at = now
            c.trial = False
            return not was_open
        return False

    async def escalation_allowed(self, *, now: float, window: float, limit: int) -> bool:
        sent = guards.prune(self._escalations, now, window)
        if len(sent) >= limit:
            return False
        sent.append(now)
        return True

    async def snapshot(self, rule: Rule, now: float) -> dict[str, object]:
        """Live state of a rule for /api/v1/rules: cooldowns and circuits per target."""
        targets = {t for (r, t) in self._attempts if r == rule.name}
        out = {}
        for t in sorted(targets):
            last = self._last_attempt.get(t)
            c = self._circuits.get((rule.name, t))
            out[t] = {
                "cooldown_remaining_seconds": max(0.0, rule.limits.cooldown - (now - last))
                if last is not None
                else 0.0,
                "attempts_in_window": len(
                    guards.prune(self._attempts[(rule.name, t)], now, rule.limits.window)
                ),
                "consecutive_failures": c.failures if c else 0,
                "circuit_open": guards.circuit_blocks(c, rule, now),
                "locked": t in self._locks,
            }
        return {"targets": out}

    def open_circuits(self, rules: Mapping[str, Rule], now: float) -> dict[str, int]:
        counts = dict.fromkeys(rules, 0)
        for (name, _), c in self._circuits.items():
            rule = rules.get(name)
            if rule is not None and guards.circuit_blocks(c, rule, now):
                counts[name] += 1
        return counts

    def restore_attempt(self, *, rule: str, target: str, at: float, shadow: bool = False) -> None:
        own = _shadow_key(rule, target) if shadow else target
        self._last_attempt[own] = max(at, self._last_attempt.get(own, 0.0))
        self._attempts.setdefault((rule, target), deque()).append(at)
        self._rule_actions.setdefault(rule, deque()).append(at)
        if not shadow:
            self._budget.add(at, target)
        for k in {own, target}:
            self._expiry[k] = max(self._expiry.get(k, 0.0), at + 86400.0)

    def restore_escalation(self, at: float) -> None:
        self._escalations.append(at)


def _shadow_key(rule: str, target: str) -> str:
    return f"{target}\x00shadow:{rule}"


SCHEMA = """
CREATE TABLE IF NOT EXISTS pauses (
    key TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    key TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS remediations (
    key TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
"""


class EmbeddedState(MemoryState):
    """MemoryState, with pauses, held alerts and remediations under way kept in SQLite
    (the journal's database), so a restart picks them up where they were."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self._db = db
        self._held_writes: Batcher[tuple[str, str | None]] = Batcher(db, _write_rows("held"))
        self._remediation_writes: Batcher[tuple[str, str | None]] = Batcher(
            db, _write_rows("remediations")
        )

    async def load(self) -> None:
        """Read the pauses back (on start)."""
        rows = await self._db.read(lambda c: c.execute("SELECT key, data FROM pauses").fetchall())
        for key, data in rows:
            d = json.loads(data)
            self._pauses[key] = Pause(d["by"], d["reason"], d["since"], d.get("until"))

    async def set_pause(self, key: str, pause: Pause | None) -> None:
        if pause is None:
            await self._db.submit(lambda c: c.execute("DELETE FROM pauses WHERE key = ?", (key,)))
        else:
            data = json.dumps(pause.to_json())
            await self._db.submit(
                lambda c: c.execute(
                    "INSERT OR REPLACE INTO pauses (key, data) VALUES (?, ?)", (key, data)
                )
            )
        await super().set_pause(key, pause)

    def save_held(self, key: str, record: Mapping[str, Any]) -> asyncio.Future[Any] | None:
        batch, _ = self._held_writes.add((key, json.dumps(record)))
        return batch

    def drop_held(self, key: str) -> None:
        self._held_writes.add((key, None))

    async def held(self) -> list[dict[str, Any]]:
        return await self._read("held")

    async def save_remediation(self, key: str, record: Mapping[str, Any]) -> None:
        batch, _ = self._remediation_writes.add((key, json.dumps(record)))
        await batch

    def drop_remediation(self, key: str, token: int = 0) -> asyncio.Future[Any] | None:
        batch, _ = self._remediation_writes.add((key, None))
        return batch

    async def remediations(self) -> list[dict[str, Any]]:
        return await self._read("remediations")

    async def _read(self, table: str) -> list[dict[str, Any]]:
        sql = f"SELECT data FROM {table} ORDER BY rowid"  # noqa: S608 - a fixed table name
        rows = await self._db.read(lambda c: c.execute(sql).fetchall())
        return [json.loads(data) for (data,) in rows]


def _write_rows(table: str) -> Any:
    """A Batcher job writing (key, data) rows in order; data None deletes the key."""
    upsert = f"INSERT OR REPLACE INTO {table} (key, data) VALUES (?, ?)"  # noqa: S608 - fixed
    delete = f"DELETE FROM {table} WHERE key = ?"  # noqa: S608 - a fixed table name

    def write(conn: sqlite3.Connection, rows: list[tuple[str, str | None]]) -> list[None]:
        for key, data in rows:  # in order: a save then a drop of one key ends dropped
            if data is None:
                conn.execute(delete, (key,))
            else:
                conn.execute(upsert, (key, data))
        return [None] * len(rows)

    return write
